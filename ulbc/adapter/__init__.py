"""The dynamic adaptation network of Zhu et al. (ICIP 2024): one bitstream, two decodes.

x̂ is the learned codec's decode (for viewing); x̄ = g_t(x̂) is what a machine-vision model reads.
:mod:`.network` holds g_t, its checkpoint file and :func:`~.network.apply_adapter`; :mod:`.train`
the training (``ulbc train adapter``); :mod:`.coco` the COCO training-set reader.
"""
