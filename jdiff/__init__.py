"""jdiff: diffusion models in JAX. The functional core (no Flax/Optax/orbax/TFDS imports)."""
from jdiff import noising, parametrization, schedules, toy
from jdiff.noising import add_noise, posterior
from jdiff.parametrization import (PARAMETRIZATIONS, Prediction, edm_coefficients, edm_precondition,
                                   from_x0_eps, make_denoiser, to_x0_eps)
from jdiff.schedules import (SCHEDULES, CosineSchedule, EDMSchedule, LinearSchedule, Schedule,
                             SigmoidSchedule, VESchedule, VPSDESchedule, get_schedule)

__version__ = "0.1.0"
