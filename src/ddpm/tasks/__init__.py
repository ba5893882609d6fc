"""What train.py, eval.py and export.py run: a Hydra config in, a run's files out. Importing this package
registers the OmegaConf resolvers the configs use (`${div:...}`, `${is_set:...}`)."""

from ddpm.tasks.config import register_resolvers

register_resolvers()
