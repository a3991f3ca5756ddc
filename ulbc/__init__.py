"""ulbc: ultra-low-bitrate compression studies, reproducible from laptop to SLURM cluster."""

import os as _os

__version__ = "0.1.0"

# Intel MKL's GEMMs, outside its conditional-reproducibility (CNR) mode, may take code paths that
# depend on how their buffers happen to be aligned, so one seed's training could end a last bit apart
# from run to run (seen: a resumed adapter training against an uninterrupted one, 4 runs in 69).
# CNR mode on the CPU's own instruction set ("AUTO") repeats bitwise at the same speed. MKL reads it
# when first called, so it holds wherever ulbc is imported before torch does maths; a user's own
# value wins.
_os.environ.setdefault("MKL_CBWR", "AUTO")
