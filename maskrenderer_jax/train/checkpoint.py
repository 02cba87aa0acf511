"""Checkpoints of a run: the GANState and the data iterator's position, with orbax.

    workdir/checkpoints/<step>/state   the GANState (sharded arrays; every process writes its
                                       shards)
    workdir/checkpoints/<step>/data    grain's iterator state, one JSON per process

A checkpoint at step t holds the state after t steps and the iterator positioned at the batch
of step t + 1, so a resumed run continues exactly as an uninterrupted one. Saving is
asynchronous (the arrays are copied off the devices, then written in the background); orbax
writes into a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoints intact and the incomplete one is ignored.

A checkpoint that is complete but does not restore (a truncated or damaged file) is reported
by step and path, and the run resumes from the newest one that does; the bad ones are moved
to workdir/unrestorable_checkpoints/ (kept for inspection, out of the way of new saves).
A config whose model differs from the run's config.json is refused before any restore, with
the differing keys (`model_differences`).
"""

import json
import logging
import shutil
from pathlib import Path

import flax.serialization
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from maskrenderer_jax.train.run_plan import RunPlan
from maskrenderer_jax.train.state import GANState, init_state

CONFIG_FILE = "config.json"  # the run's config, beside checkpoints/
PLAN_FILE = "plan.json"  # what the run resolved from it and the data set (its RunPlan)
UNRESTORABLE_DIR = "unrestorable_checkpoints"


class CheckpointError(ValueError):
    """No checkpoint of a run restores into the state this config builds; names each."""


class IncompatibleConfigError(ValueError):
    """The config's model is not the one the run's checkpoints were trained with."""


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).expanduser().resolve() / "checkpoints"


def write_run_config(workdir: str | Path, config: ml_collections.ConfigDict) -> Path:
    """workdir/config.json: the config as given (its epoch values unresolved; see plan.json)."""
    path = Path(workdir) / CONFIG_FILE
    path.write_text(config.to_json_best_effort(indent=2) + "\n")
    return path


def write_run_plan(workdir: str | Path, plan: RunPlan) -> Path:
    """workdir/plan.json: what the run resolved from its config and data set."""
    path = Path(workdir) / PLAN_FILE
    path.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return path


def read_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (its config.json; JSON lists where it had tuples)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {workdir} a training run's workdir?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a readable config ({e})") from e


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def model_differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    """['model.a.b: X in the run, Y now', ...] between two configs' model sections (compared as
    JSON, where tuples are lists)."""
    old = _flat(json.loads(saved.model.to_json_best_effort()), "model") if "model" in saved else {}
    new = _flat(json.loads(config.model.to_json_best_effort()), "model")
    missing = object()
    return [
        f"{key}: {old.get(key, '(absent)')} in the run, {new.get(key, '(absent)')} now"
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    ]


def check_compatible(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """IncompatibleConfigError when the workdir has checkpoints and its config.json describes
    another model than `config` (a resume would fail deep inside orbax)."""
    path = Path(workdir) / CONFIG_FILE
    if not saved_steps(workdir) or not path.is_file():
        return
    differences = model_differences(read_run_config(workdir), config)
    if differences:
        shown = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
        raise IncompatibleConfigError(
            f"{workdir} holds checkpoints of another model ({len(differences)} model settings "
            f"differ from {path}: {shown}). Use that config (or a new --workdir)."
        )


def saved_steps(workdir: str | Path) -> list[int]:
    """The steps of a run's complete checkpoints, ascending (orbax renames a checkpoint's
    temporary folder to its step number when it is complete)."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


class Checkpoints:
    """An orbax CheckpointManager for (GANState, grain iterator) pairs."""

    def __init__(self, workdir: str | Path, checkpoint: ml_collections.ConfigDict):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=checkpoint.keep,
            save_interval_steps=checkpoint.every_steps,
            enable_async_checkpointing=checkpoint.asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
        self.unrestorable: list[tuple[int, Path, str]] = []

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether `step` is a checkpoint step (`checkpoint.every_steps`; orbax's decision)."""
        return self.manager.should_save(step)

    def save(self, step: int, state: GANState, iterator=None, *, force: bool = False) -> bool:
        """Saves if `step` is `due` (or `force`); returns whether it saves."""
        items = {"state": ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            logging.info("saving checkpoint at step %d", step)
        return saved

    def restore(self, abstract_state: GANState, iterator=None, step: int | None = None):
        """(state, step) of checkpoint `step`, or by default of the newest checkpoint that
        restores, the iterator (if given) repositioned in place; None when there is none.

        Checkpoints newer than the one restored that failed are logged by step and path and
        listed in `self.unrestorable` as (step, path, reason); CheckpointError when none
        restores."""
        self.unrestorable = []
        if step is not None:
            return self._restore(abstract_state, iterator, step), step
        for candidate in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self._restore(abstract_state, iterator, candidate)
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds
                reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
                path = Path(self.manager.directory) / str(candidate)
                logging.error("checkpoint %d (%s) does not restore: %s", candidate, path, reason)
                self.unrestorable.append((candidate, path, reason))
                continue
            if self.unrestorable:
                logging.warning(
                    "resuming from checkpoint %d, the newest that restores (not restored: %s)",
                    candidate, ", ".join(f"{s} at {p}" for s, p, _ in self.unrestorable),
                )  # fmt: skip
            return state, candidate
        if self.unrestorable:
            raise CheckpointError(
                "no checkpoint restores into this config's state:\n"
                + "\n".join(f"  step {s} ({p}): {r}" for s, p, r in self.unrestorable)
            )
        return None

    def _restore(self, abstract_state: GANState, iterator, step: int) -> GANState:
        target = flax.serialization.to_state_dict(abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return flax.serialization.from_state_dict(abstract_state, restored["state"])

    def set_aside_unrestorable(self, workdir: str | Path) -> list[Path]:
        """Moves the checkpoints `restore` could not read (newer than the one it restored) to
        workdir/unrestorable_checkpoints/<step> (kept, never deleted: new saves of those
        steps would otherwise collide with them); returns where they went."""
        moved = []
        for step, path, _ in self.unrestorable:
            target = Path(workdir).expanduser().resolve() / UNRESTORABLE_DIR / str(step)
            if target.exists():
                target = target.with_name(f"{step}.{len(list(target.parent.iterdir()))}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            logging.warning("moved the unrestorable checkpoint %d to %s", step, target)
            moved.append(target)
        if moved:
            self.manager.reload()
        self.unrestorable = []
        return moved

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_network_variables(
    workdir: str | Path, config: ml_collections.ConfigDict, step: int | None = None
) -> dict:
    """{'model': {'params', 'batch_stats'} of the generator side (FFD, dense motion,
    generator), 'discriminator': its {'params', 'batch_stats'}} from a run's checkpoint
    (default: the latest), on the default device."""
    if not checkpoint_dir(workdir).is_dir():
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        jax.eval_shape(lambda: init_state(config, 0)),
    )
    checkpoints = Checkpoints(workdir, config.checkpoint)
    restored = checkpoints.restore(abstract, step=step)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    state, _ = restored
    return {
        "model": {"params": state.generator, "batch_stats": state.generator_stats},
        "discriminator": {"params": state.discriminator, "batch_stats": state.discriminator_stats},
    }


def load_generator_variables(
    workdir: str | Path, config: ml_collections.ConfigDict, step: int | None = None
) -> dict:
    """{'params', 'batch_stats'} of the generator side from a run's checkpoint (default: the
    latest), for inference."""
    return load_network_variables(workdir, config, step)["model"]
