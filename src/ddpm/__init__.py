"""DDPM experiment framework: Gaussian diffusion, the DDPM U-Net, Lightning glue and Hydra configs.

The package is grouped by layer, lowest first; a module imports only its own layer and those below it
(tests/test_architecture.py, docs/architecture.md):

    errors    the bad-input error types
    core      the math: schedules, parametrization, diffusion, likelihood, objective, guidance, samplers
    nn        the U-Net and the EMA of its weights
    runtime   how the math runs: the execution plan, RNG streams, the stop request
    data      data sets, epoch order, the LightningDataModules
    metrics   FID and its companions, the feature networks
    io        checkpoints, old formats, diffusers
    pipeline  sampling and evaluating a sample request, without Lightning
    training  the LightningModule, callbacks, resume, loggers
    tasks     what train.py, eval.py and export.py run (Hydra configs in, files out)

Importing the package imports nothing else; `import ddpm.tasks` registers the OmegaConf resolvers the configs use.
"""

__version__ = "0.1.0"
