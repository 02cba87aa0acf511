"""Reading traced programs: how often a jitted function is called in a jaxpr."""

from jax.extend.core import jaxprs_in_params


def jit_calls(jaxpr, name: str) -> int:
    """The calls of the `jax.jit` function `name` in a (closed) jaxpr, nested ones included
    (inside loops, conditionals and other jitted functions)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "jit" and eqn.params["name"] == name
        count += sum(jit_calls(inner, name) for inner in jaxprs_in_params(eqn.params))
    return count
