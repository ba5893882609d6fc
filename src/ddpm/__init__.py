"""DDPM experiment framework: Gaussian diffusion, the DDPM U-Net, Lightning glue and Hydra configs.

Importing the package is cheap (no Lightning import); it registers the OmegaConf resolvers the
configs use, so `compose()` in tests and notebooks works after `import ddpm`.
"""

from .config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
