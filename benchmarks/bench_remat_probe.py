"""Does rematerialisation lower XLA's temporary memory here? A probe outside LSS, on a plain chain of blocks.

    python benchmarks/bench_remat_probe.py [--blocks 8] [--size 128]

Eight blocks of four 3x3 convolutions + tanh on a [4, size, size, 32] map; the gradient of a squared sum is
compiled three ways and XLA's temporary buffer size (``compiled.memory_analysis()``) printed for each:

- ``none``: plain autodiff (every block's activations kept for the backward pass);
- ``checkpoint``: each block under ``jax.checkpoint`` (recomputed from its input; JAX's barrier is on the
  saved input only);
- ``gated``: each block as a ``custom_vjp`` whose backward recomputes the block behind an
  ``optimization_barrier`` that also holds the incoming cotangent, so the recomputation cannot run before the
  backward pass reaches the block.

Measured on the 2-core CPU machine (jax 0.10.2, XLA:CPU), ``--blocks 8 --size 128``: none 529.1 MiB,
checkpoint 529.1 MiB, gated 529.1 MiB; the forward pass alone 17.1 MiB. On XLA:CPU neither form of remat lowers
the step's temporary memory, which is what ``bench_lss.py --remat`` found for LSS; accelerators are yet to be
measured.
"""

from __future__ import annotations

import argparse
from functools import partial


def block(w, x):
    """Four 3x3 convolutions with tanh: w [4, 3, 3, c, c], x [b, h, w, c]."""
    import jax
    import jax.numpy as jnp

    for i in range(w.shape[0]):
        x = jnp.tanh(
            jax.lax.conv_general_dilated(x, w[i], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        )  # b h w c
    return x


def gated(f):
    """``f(w, x)`` whose backward pass recomputes ``f`` only once the cotangent has arrived."""
    import jax

    @jax.custom_vjp
    def g(w, x):
        return f(w, x)

    def fwd(w, x):
        return f(w, x), (w, x)

    def bwd(saved, ct):
        (w, x), ct = jax.lax.optimization_barrier((saved, ct))
        _, vjp = jax.vjp(f, w, x)
        return vjp(ct)

    g.defvjp(fwd, bwd)
    return g


def net(ws, x, wrap):
    import jax.numpy as jnp

    for w in ws:
        x = wrap(block)(w, x)
    return jnp.sum(x**2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    import jax

    key = jax.random.PRNGKey(0)
    ws = [jax.random.normal(key, (4, 3, 3, 32, 32)) * 0.05 for _ in range(args.blocks)]
    x = jax.random.normal(key, (4, args.size, args.size, 32))
    forward = jax.jit(partial(net, wrap=lambda f: f)).lower(ws, x).compile()
    print(f"{'forward':10s} temp {forward.memory_analysis().temp_size_in_bytes / 2**20:8.1f} MiB")
    for name, wrap in (("none", lambda f: f), ("checkpoint", jax.checkpoint), ("gated", gated)):
        compiled = jax.jit(jax.grad(partial(net, wrap=wrap))).lower(ws, x).compile()
        print(f"{name:10s} temp {compiled.memory_analysis().temp_size_in_bytes / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
