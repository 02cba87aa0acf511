"""The one format of BENCHMARKS.md: each script owns a `## ` section, written with the facts of
the run (command, date, machine, load, versions) so every number can be traced to its run."""

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import jax

PATH = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = """# Benchmarks

Speed measurements of maskrenderer_jax, side by side with the reference implementations.
Every table below is written by a script in `benchmarks/` (`--write`), with the command, date,
machine and versions of the run that produced it; re-run the script rather than editing numbers.
"""
PACKAGES = ("jax", "jaxlib", "flax", "torch")


def facts() -> list[str]:
    """Command, date, CPU, cores, load average now (call it before the work), versions."""
    cpu = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    module = Path(sys.argv[0]).stem
    return [
        f"command: `{' '.join(['python -m benchmarks.' + module, *sys.argv[1:]])}`",
        f"date: {subprocess.run(['date', '-u'], capture_output=True, text=True).stdout.strip()}",
        f"machine: {cpu.group(1) if cpu else platform.processor()}, {os.cpu_count()} cores, "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"versions: python {platform.python_version()}, {', '.join(versions)}; JAX device: "
        f"{jax.devices()[0]} ({jax.devices()[0].device_kind}); XLA_FLAGS: "
        f"{os.environ.get('XLA_FLAGS', 'unset')}",
    ]


def publish(title: str, intro: str, table: str, run_facts: list[str], write: bool) -> None:
    """Prints the section (intro, table, facts of the run) and, if `write`, records it."""
    body = "\n".join([intro, "", table, "", *(f"- {line}" for line in run_facts)])
    print(f"\n{title}\n\n{body}")
    if write:
        write_section(title, body)
        print(f"\nwrote {PATH.name}")


def write_section(title: str, body: str, path: Path = PATH) -> None:
    """Replaces (or appends) the section `title` ('## ...'); the file is read right before it
    is written, since other scripts own the other sections."""
    text = path.read_text() if path.exists() else HEADER
    section = f"{title}\n\n{body}\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
