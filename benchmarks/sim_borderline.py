"""Where does a classifier put a borderline cell? The run-all classifier on cells drawn at one ``t``.

The morphology file's ``ambiguity`` section draws a cell of class ``a`` as *borderline* towards a
confuser ``b``: its measured statistics, stains and rendering corrections lie a fraction ``t`` of the
way from ``a`` to ``b`` (:func:`cellbench.sim.morphology.ambiguity_from_confusion`). Its rates assume
that a classifier calls such a cell ``b`` when ``t > 1/2``, i.e. errs on half of them (``t`` uniform).
This script checks the assumption: it trains the WBC classifier exactly as ``cellbench run-all``
(profile ``quick``, ``--data synthetic``, seed 0) does on the packaged scenes, then renders, for every
(class, confuser) pair of the packaged section and each ``t`` of a grid, ``--n`` cells of the class at
that ``t`` (the section's ``t_range`` set to ``[t, t]``, rate 1) through the dm96-like system and
prints how many the classifier calls ``a``, ``b`` or something else::

    .venv/bin/python benchmarks/sim_borderline.py            # ~3 min on two cores

Session 14 (``--n 16``, t = 0.1 .. 0.9; 2 min): at t = 0.1 every cell is called ``a``, at t = 0.3 14-16 of
16 (monocyte -> erythroblast 10, the other 6 called lymphocyte), at t = 0.7 12-16 of 16 are called ``b``,
at t = 0.9 all 16; at t = 1/2 either. The classifier reads ``t`` with its border near 1/2, so it errs on
about half of the borderline cells, as the rates assume (monocyte -> erythroblast, whose middle is called
lymphocyte, on more).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cellbench.data.sets import LabelledSet
from cellbench.sim import simulate_pair
from cellbench.sim.morphology import load_morphology
from cellbench.train.classifier import evaluate_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_classifier import runall_classifier  # noqa: E402 - the sibling benchmark's run-all classifier


def borderline_images(morph: dict, a: str, b: str, t: float, n: int, *, seed: int = 777, size: int = 256):
    """``n`` dm96-like (Y) renderings of class ``a`` drawn borderline towards ``b`` at exactly ``t`` (pairs
    ``0 .. n-1`` of :func:`cellbench.sim.simulate_pair` with a one-class, rate-1 section)."""
    m = json.loads(json.dumps(morph))
    m["ambiguity"] = {"rates": {a: 1.0}, "confusers": {a: {b: 1.0}}, "how": "sim_borderline.py", "t_range": [t, t]}
    return [simulate_pair(i, size=size, seed=seed, classes=[a], morphology=m).y for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="cells per (pair, t)")
    ap.add_argument("--t", default="0.1,0.3,0.5,0.7,0.9", help="comma-separated fractions of the way to b")
    ap.add_argument("--seed", type=int, default=0, help="run seed (classifier and synthetic data, as run-all)")
    ap.add_argument("--json", default=None, help="also write the counts here")
    args = ap.parse_args()
    ts = [float(v) for v in args.t.split(",")]
    morph = load_morphology()
    amb = morph.get("ambiguity")
    if not amb:
        sys.exit("the packaged morphology file has no 'ambiguity' section: nothing to probe")
    pairs = [(a, b) for a in sorted(amb["confusers"]) for b in sorted(amb["confusers"][a])]

    clf = runall_classifier(seed=args.seed, splits=("train", "val"))[0]
    rows = []
    print(f"{'class':>13} -> {'confuser':<13} {'t':>4}  called class / confuser / other (of {args.n})")
    for a, b in pairs:
        for t in ts:
            ims = borderline_images(morph, a, b, t, args.n)
            x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float().div_(255.0)
            r = evaluate_classifier(clf, LabelledSet(x, [a] * len(ims), [f"{a}-{b}-{t}-{i}" for i in range(len(ims))]))
            cl = r["classes"]
            row = np.asarray(r["confusion"])[cl.index(a)]
            k_a, k_b = int(row[cl.index(a)]), int(row[cl.index(b)])
            other = {cl[j]: int(v) for j, v in enumerate(row) if v and cl[j] not in (a, b)}
            rows.append({"class": a, "confuser": b, "t": t, "called_class": k_a, "called_confuser": k_b,
                         "other": other, "n": int(row.sum())})
            print(f"{a:>13} -> {b:<13} {t:4.2f}  {k_a:3d} / {k_b:3d} / {int(row.sum()) - k_a - k_b:3d}"
                  + (f"  {other}" if other else ""), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
