"""jdiff: diffusion models in JAX.

The functional core (this package's top-level modules) is pure ``jax.numpy``: schedules, noising,
parametrizations, losses, likelihood bounds, samplers, guidance, conditions. Above it (import those
explicitly; the core does not import Flax, Optax, orbax, grain or TFDS): Flax denoisers in
``jdiff.models``, data in ``jdiff.data``, what a workdir holds in ``jdiff.experiment``, using a trained
model in ``jdiff.generation``, evaluation in ``jdiff.eval``, training in ``jdiff.training``.
"""
from jdiff import (conditions, editing, grids, guidance, keys, likelihood, losses, multistep,
                   noising, ode, ode_likelihood, parametrization, samplers, sampling, schedules, toy)
from jdiff.grids import GRIDS, get_grid
from jdiff.guidance import (classifier_free, classifier_guidance, classifier_log_prob, clip_x0,
                            dynamic_threshold)
from jdiff.likelihood import bits_per_dim, continuous_vlb, discrete_vlb, hybrid_loss
from jdiff.ode_likelihood import ode_nll
from jdiff.losses import denoising_loss, loss_weight, noisy_classifier_loss, sample_times
from jdiff.noising import add_noise, posterior, posterior_coefficients
from jdiff.parametrization import (PARAMETRIZATIONS, Prediction, edm_coefficients, edm_precondition,
                                   from_x0_eps, make_denoiser, to_x0_eps)
from jdiff.samplers import Sampler, SampleOutput
from jdiff.sampling import SAMPLER_NAMES, SAMPLERS, get_sampler, initial_noise, make_sample_fn, sample
from jdiff.schedules import (SCHEDULES, CosineSchedule, EDMSchedule, FlowSchedule, LinearSchedule,
                             Schedule, SigmoidSchedule, VESchedule, VPSDESchedule, get_schedule)

__version__ = "0.1.0"
