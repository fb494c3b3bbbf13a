"""Count compilations of a jitted function from JAX's own monitoring events."""

from __future__ import annotations

import contextlib

import jax

LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"


@contextlib.contextmanager
def lowerings(name: str):
    """Count how often JAX lowers (i.e. compiles in memory) the jitted function `name`,
    from JAX's own monitoring events; a persistent-cache hit is still counted.

        with lowerings("attack") as count:
            ...
        assert count == [1]  # filled in when the block ends
    """
    seen: list[str] = []

    def listener(event: str, _: float, *, fun_name: str = "", **__: object) -> None:
        if event == LOWERING:
            seen.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts: list[int] = []
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        counts.append(seen.count(f"jit({name})"))
