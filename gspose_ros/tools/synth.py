"""gspose-synth: write a synthetic BOP dataset of the built-in objects (1 textured, 2 low-texture, 3 duck mesh)."""

from __future__ import annotations

import argparse
import sys

from ..core.synth import OBJECTS, generate_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gspose-synth", description=__doc__)
    p.add_argument("root")
    p.add_argument("--obj-id", default=",".join(str(i) for i in OBJECTS))
    p.add_argument("--num-refs", type=int, default=136,
                   help="reference views per object (split 'train'; 128 + 8 held out for PSNR)")
    p.add_argument("--num-tests", type=int, default=20, help="query views per object (split 'test')")
    p.add_argument("--num-multi", type=int, default=10,
                   help="images showing all the objects together (split 'test_multi'; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    generate_dataset(a.root, tuple(int(x) for x in a.obj_id.split(",")), a.num_refs, a.num_tests, a.seed,
                     n_multi=a.num_multi)
    print(f"wrote {a.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
