"""One definition per concept in nucdata_models: macro F1, and the scoring of filled labels (AST scans).

Each concept is recognised by the computation that defines it, not by a name, so a
second copy under another name fails too:

* **F1 per class** is ``2 TP / (2 TP + FP + FN)``: a product ``2 * <true positives>``
  (an expression naming ``tp``, a diagonal or a trace).
* **Macro F1** is a mean over per-class F1: a ``.mean()``/``.sum()``/``np.mean`` of a
  variable named ``f1`` (or a slice of it).
* **Filled nuclei** are those their own dataset did not annotate in the set: a
  comparison ``provenance != ANNOTATED``.
* **Scoring filled labels** reads the known truth (``.truth``) and computes metrics
  (``classification_metrics`` or a confusion matrix) in one function.

Each must occur in exactly one function, the one named here; the others call it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "nucdata_models"


def _functions() -> list[tuple[str, ast.FunctionDef]]:
    """(qualified name, node) of every function and method in nucdata_models."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((f"{prefix}.{child.name}", child))
                    visit(child, f"{prefix}.{child.name}")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}.{child.name}")
                else:
                    visit(child, prefix)

        visit(tree, module)
    return out


FUNCTIONS = _functions()


def _own_nodes(fn: ast.FunctionDef):
    """The nodes of a function's body, not of functions nested in it."""
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        stack += [c for c in ast.iter_child_nodes(node) if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _where(predicate) -> list[str]:
    return sorted({name for name, fn in FUNCTIONS if any(predicate(n) for n in _own_nodes(fn))})


def _is_two_times_true_positives(node: ast.AST) -> bool:
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
        return False
    for const, other in ((node.left, node.right), (node.right, node.left)):
        if isinstance(const, ast.Constant) and const.value == 2:
            text = ast.unparse(other).lower()
            if "tp" in text.replace("(", " ").replace(")", " ").split() or "diag" in text or "trace" in text:
                return True
    return False


def _is_f1_mean(node: ast.AST) -> bool:
    def is_f1(expr: ast.AST) -> bool:
        while isinstance(expr, ast.Subscript):
            expr = expr.value
        return isinstance(expr, ast.Name) and expr.id == "f1"

    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in ("mean", "sum", "nanmean", "average"):
        if is_f1(func.value):  # f1.mean(), f1[present].sum(-1)
            return True
        if isinstance(func.value, ast.Name) and func.value.id in ("np", "numpy", "torch"):
            return bool(node.args) and is_f1(node.args[0])  # np.mean(f1)
    return False


def _is_not_annotated(node: ast.AST) -> bool:
    return (isinstance(node, ast.Compare) and any(isinstance(op, ast.NotEq) for op in node.ops)
            and any(isinstance(c, ast.Name) and c.id == "ANNOTATED" for c in [node.left, *node.comparators]))


def _reads_truth(fn: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "truth" for n in _own_nodes(fn))


def _computes_metrics(fn: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Call) and ast.unparse(n.func).split(".")[-1] in ("classification_metrics",
                                                                                "cluster_confusions")
               for n in _own_nodes(fn))


def test_the_scan_sees_the_package():
    names = {name for name, _ in FUNCTIONS}
    assert {"nucdata_models.metrics.classification_metrics", "nucdata_models.train.CrossTrainer.fit"} <= names


def test_one_f1_per_class():
    assert _where(_is_two_times_true_positives) == ["nucdata_models.metrics.f1_from_confusion"]


def test_one_macro_f1():
    assert _where(_is_f1_mean) == ["nucdata_models.metrics.macro_f1_from_confusion"]
    defined = sorted(name for name, _ in FUNCTIONS if "macro_f1" in name.rsplit(".", 1)[-1])
    assert defined == ["nucdata_models.metrics.macro_f1_from_confusion"]


def test_one_selection_of_filled_nuclei():
    assert _where(_is_not_annotated) == ["nucdata_models.fill.filled_nuclei"]


def test_one_scoring_of_filled_labels():
    scorers = sorted(name for name, fn in FUNCTIONS if _reads_truth(fn) and _computes_metrics(fn))
    # the study's score_views counts per-image confusions for its bootstrap, on the same selection
    assert scorers == ["nucdata_models.fill.score_filled", "nucdata_models.study._run.score_views"]
    views = dict(FUNCTIONS)["nucdata_models.study._run.score_views"]
    assert "filled_nuclei" in ast.unparse(views)
    # a function of that name elsewhere is a deprecated alias that warns and delegates
    for name, fn in FUNCTIONS:
        if name.rsplit(".", 1)[-1] == "score_filled" and name != "nucdata_models.fill.score_filled":
            assert "DeprecationWarning" in ast.unparse(fn), f"{name}: a second score_filled"
