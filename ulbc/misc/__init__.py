"""MISC (Li et al., 2024): ultra-low-bitrate semantic compression driven by a large multimodal model.

An LMM describes the image (three object names, a sentence about each, an overall description),
a mapper marks where each object is on a coarse block grid, a learned or classical codec codes a
very small base image, and a generative decoder restores the image from base image, text and maps.

- :mod:`ulbc.misc.answer`: the LMM's five-line answer, parsed and checked;
- :mod:`ulbc.misc.captioners`: who writes it (a table of answers, an OpenAI-compatible endpoint, a
  local vision-language model through :mod:`ulbc.misc.vlm`);
- :mod:`ulbc.misc.mappers`, :mod:`ulbc.misc.generators`, :mod:`ulbc.misc.diffusion`: the object maps
  and the decoders (up-sampling, Stable Diffusion 2.1);
- :mod:`ulbc.misc.masks`: the objects' block masks, one bit per block;
- :mod:`ulbc.misc.text`: the text's coding (raw UTF-8, raw deflate, brotli) and
  its size against the paper's 8 bits per character;
- :mod:`ulbc.misc.rate`: the paper's rate formula, for comparison with the file's.
"""
