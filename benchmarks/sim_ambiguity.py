"""Write the ``ambiguity`` section of a morphology file from a realism check's real -> real confusion.

The scene sampler draws borderline cells (between a class and the classes real cells of it are
mistaken for) at the rates this section holds (:func:`cellbench.sim.morphology.ambiguity_from_confusion`).
The rates come from a real classifier on real test images, which is what
``cellbench simulate validate --real DIR --json`` trains and reports as ``real_to_real``::

    .venv/bin/cellbench simulate validate --real ../shared/data/pbc_dm96 --json > /tmp/validate.json
    .venv/bin/python benchmarks/sim_ambiguity.py /tmp/validate.json cellbench/sim/params/morphology-pbc-v2.json \
        --ambiguous-fraction 0.5

The file is rewritten atomically with the new section (everything else unchanged); the section's
``how`` names the validate settings it came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cellbench.sim.morphology import ambiguity_from_confusion, load_morphology, save_morphology


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("validate_json", type=Path, help="output of `cellbench simulate validate --json`")
    ap.add_argument("morphology", type=Path, help="morphology file to update (written in place)")
    ap.add_argument("--label-width", type=float, default=None,
                    help="label borderline cells as an expert would, by the nearer class with a soft border of "
                         "this width in t (default: they keep their own class)")
    ap.add_argument("--ambiguous-fraction", type=float, default=1.0,
                    help="share of the real errors attributed to ambiguity (the rest to the real classifier's own "
                         "mistakes): every rate times this (the packaged file: 0.5)")
    args = ap.parse_args()
    result = json.loads(args.validate_json.read_text(encoding="utf-8"))
    rr, st = result["real_to_real"], result.get("settings", {})
    source = (f"`cellbench simulate validate --real {st.get('real')}` real_to_real (classifier preset "
              f"{st.get('preset')}, {st.get('input_size')} px, seed {st.get('seed')}, {rr['n']} real test images, "
              f"accuracy {rr['accuracy']:.4f}), via benchmarks/sim_ambiguity.py")
    params = load_morphology(args.morphology)
    params["ambiguity"] = ambiguity_from_confusion(rr["confusion"], list(rr["classes"]), source=source,
                                                   label_width=args.label_width,
                                                   ambiguous_fraction=args.ambiguous_fraction)
    save_morphology(params, args.morphology)
    print(json.dumps(params["ambiguity"], indent=1))


if __name__ == "__main__":
    main()
