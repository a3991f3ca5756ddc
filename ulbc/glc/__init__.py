"""GLC, generative latent coding (Jia et al., CVPR 2024): transform coding in the latent space of a
VQ-VAE, with a categorical hyper prior (one codebook index per hyper-latent position) and a
four-pass spatial context model.

- :mod:`ulbc.glc.config`: :class:`GLCConfig` and the named configurations (torch-free);
- :mod:`ulbc.glc.model`: the network, module and parameter names as in the authors' release, so
  their checkpoint loads with ``strict=True``;
- :mod:`ulbc.glc.coding`: the bitstream (z indices bit-packed, y range-coded pass by pass);
- :mod:`ulbc.glc.train`: stages II and III of the training (``ulbc train glc``).
"""
