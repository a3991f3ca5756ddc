"""ulbc: ultra-low-bitrate compression studies, reproducible from laptop to SLURM cluster."""

__version__ = "0.1.0"
