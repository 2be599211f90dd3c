"""Turn a sweep into the paper's table: mean ± std over seeds, the paper's numbers beside.

Formats: Markdown, LaTeX, CSV (long form: one line per cell and value).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import yaml

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.study.spec import check_spec_values, normalize_labels
from implicit_sparsity.study.stats import Stat, compare
from implicit_sparsity.study.sweep import EVALUATION, read_index

VALUE_NAMES = {**{f"layers.C{i}.sparsity_gamma": f"C{i} % by γ" for i in range(1, 20)},
               "units_recycled": "units recycled", "filters_harvested": "filters harvested",
               "sparsity_activation": "% sparsity by act.",
               "sparsity_gamma": "% sparsity by γ", "sparsity_dormant": "% dormant (ReDo)",
               "test_error": "test err", "pruned_test_error": "pruned test err",
               "test_error_top5": "top-5 err", "pruned_test_error_top5": "pruned top-5 err",
               "params_pruned": "% params pruned", "train_loss": "train loss",
               "test_loss": "test loss", "changed_predictions": "changed predictions"}


#: Text -> LaTeX: the characters LaTeX reserves, and the symbols our tables use.
LATEX_REPLACEMENTS = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$",
                      "#": "\\#", "_": "\\_", "{": "\\{", "}": "\\}",
                      "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                      "±": "$\\pm$", "γ": "$\\gamma$", "β": "$\\beta$", "λ": "$\\lambda$",
                      "×": "$\\times$", "→": "$\\rightarrow$", "≤": "$\\leq$",
                      "≥": "$\\geq$"}


def latex_escape(text: str) -> str:
    """`text` as LaTeX typesets it, one character at a time (so escapes never stack)."""
    return "".join(LATEX_REPLACEMENTS.get(ch, ch) for ch in str(text))


def collect(out: str | Path) -> tuple[dict, list[dict]]:
    """(spec, records): one record per evaluated run, its labels and figures."""
    out = Path(out)
    index = read_index(out)
    try:
        saved = yaml.safe_load((out / "spec.yaml").read_text())
        spec = {**saved["spec"], "_quick": bool(saved.get("quick"))}
        check_spec_values({"name": "?", **spec}, f"{out / 'spec.yaml'}")
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):  # torn, or by hand
        raise ConfigError(f"{out}: spec.yaml is damaged; run the sweep command "
                          "again to rewrite it (finished runs are kept)") from None
    records = []
    for key, entry in index.items():
        path = out / "runs" / key / EVALUATION
        if not path.is_file():
            continue
        try:
            evaluation = json.loads(path.read_text())
        except ValueError:
            raise ConfigError(f"{path} is damaged; delete it and run the sweep again to "
                              "evaluate that run anew") from None
        records.append({**entry["labels"], "seed": entry["seed"], "key": key,
                        "config": entry.get("config") or {}, **evaluation})
    return spec, records


def diverged_note(records: list[dict]) -> str:
    """One line naming the runs that diverged (they are left out of the table)."""
    gone = [r for r in records if r.get("diverged")]
    if not gone:
        return ""
    return ("\n\ndiverged (non-finite loss; not in the table): "
            + ", ".join(f"{r['key']} (epoch {r.get('epoch', '?')})" for r in gone))


def _get(record: dict, name: str):
    """A value by dotted path: "layers.C1.sparsity_gamma"."""
    value = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def label_text(value):
    """A label as a table cell holds it: a dict or list (`optimizer_args: {betas: [...]}`)
    becomes its one-line YAML, so that it can key a row like a number or a name does."""
    if isinstance(value, (dict, list, tuple)):
        return yaml.safe_dump(value if not isinstance(value, tuple) else list(value),
                              default_flow_style=True, width=10**6).strip()
    return value


def _key(record: dict, names: list[str]) -> tuple:
    return tuple(label_text(record.get(n)) for n in names)


def aggregate(spec: dict, records: list[dict]) -> dict:
    """{(row, column): {value: (mean, std, n, paper)}} over seeds."""
    table = spec.get("table") or {}
    rows, columns = table.get("rows", []), table.get("columns", [])
    values = table.get("values", ["sparsity_gamma", "test_error"])
    paper = {}
    for entry in spec.get("paper") or []:
        labels = normalize_labels({k: entry[k] for k in rows + columns if k in entry})
        paper[(_key(labels, rows), _key(labels, columns))] = entry
    cells: dict = {}
    for record in records:
        if record.get("diverged"):
            continue
        cells.setdefault((_key(record, rows), _key(record, columns)), []).append(record)
    result = {}
    for cell, members in cells.items():
        result[cell] = {}
        for value in values:
            numbers = [_get(m, value) for m in members if _get(m, value) is not None]
            mean = statistics.fmean(numbers) if numbers else None
            std = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
            result[cell][value] = (mean, std, len(numbers), paper.get(cell, {}).get(value))
    return result


def _fmt(mean, std, n, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def render(spec: dict, records: list[dict], fmt: str = "markdown") -> str:
    table = spec.get("table") or {}
    rows, columns = table.get("rows", []), table.get("columns", [])
    values = table.get("values", ["sparsity_gamma", "test_error"])
    cells = aggregate(spec, records)
    row_keys = sorted({r for r, _ in cells}, key=str)
    row_keys = [r for r in _spec_order(spec, rows)] + [r for r in row_keys
                                                      if r not in _spec_order(spec, rows)]
    row_keys = [r for r in row_keys if any((r, c) in cells for c in _columns(cells))]
    col_keys = _columns(cells)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(rows + columns + ["value", "mean", "std", "n", "paper"])
        for r in row_keys:
            for c in col_keys:
                for value, (mean, std, n, paper) in cells.get((r, c), {}).items():
                    writer.writerow(list(r) + list(c) + [value, mean, std, n, paper])
        return buffer.getvalue()
    beside = bool(spec.get("paper"))  # a study beyond the paper has no numbers to set beside
    sides = ("(ours)", "(paper)") if beside else ("",)
    header = rows + [f"{' '.join(map(str, c))} {VALUE_NAMES.get(v, v)} {who}".strip()
                     for c in col_keys for v in values for who in sides]
    body = []
    for r in row_keys:
        line = ["-" if x is None else str(x) for x in r]
        for c in col_keys:
            for v in values:
                mean, std, n, paper = cells.get((r, c), {}).get(v, (None, 0, 0, None))
                digits = 2 if v.endswith("loss") else 1
                line += [_fmt(mean, std, n, digits)]
                if beside:
                    line += ["-" if paper is None else f"{paper:g}"]
        body.append(line)
    if fmt == "latex":
        spec_cols = "l" * len(rows) + "r" * (len(header) - len(rows))
        lines = [f"\\begin{{tabular}}{{{spec_cols}}}", "\\hline",
                 " & ".join(latex_escape(h) for h in header) + " \\\\", "\\hline"]
        lines += [" & ".join(latex_escape(x) for x in line) + " \\\\" for line in body]
        lines += ["\\hline", "\\end{tabular}"]
        note = diverged_note(records)
        return "\n".join(lines) + (f"\n%{note.strip()}" if note else "")
    if fmt != "markdown":
        raise ConfigError(f"unknown format {fmt!r}; valid: markdown, latex, csv")
    title = f"**{spec.get('title', spec.get('name'))}**\n\n{provenance(spec, records)}\n\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return title + "\n".join(lines) + diverged_note(records) + claims_text(spec, records)


def _matching(records: list[dict], labels: dict) -> list[dict]:
    wanted = normalize_labels(labels)
    return [r for r in records if not r.get("diverged")
            and all(r.get(k) == v for k, v in wanted.items())]


def claim_verdicts(spec: dict, records: list[dict]) -> list[dict]:
    """Each claim of the spec, per value of its `each` key: the two sides' Stat over seeds
    and the verdict by study.stats' rule. The `each` value applies to both sides unless
    `than` names that key (then the baseline is one set of runs for all)."""
    results = []
    for claim in spec.get("claims") or []:
        (key, values), = (claim.get("each") or {None: [None]}).items()
        for value in values:
            each = {key: value} if key else {}
            side = {**each, **claim.get("where", {})}
            than = {**each, **claim["than"]}  # `than` may name the `each` key: a fixed baseline
            ours, baseline = (Stat.of([_get(r, claim["value"]) for r in _matching(records, s)
                                       if _get(r, claim["value"]) is not None])
                              for s in (side, than))
            results.append({"claim": claim["claim"], "side": side, "than": than,
                            "value": claim["value"], "a": ours, "b": baseline,
                            "verdict": compare(ours, baseline)})
    return results


def claims_text(spec: dict, records: list[dict]) -> str:
    """The claims' verdicts under the table, one line each (Markdown)."""
    verdicts = claim_verdicts(spec, records)
    if not verdicts:
        return ""
    lines = ["", "", "Claims (means over seeds; a claim holds when the difference exceeds "
             "the seeds' spread and 1 point: study.stats):"]
    for v in verdicts:
        side = " + ".join(str(x) for x in v["side"].values())
        than = " + ".join(str(x) for x in v["than"].values())
        lines.append(f"- {v['claim']}: {side} {v['a']} vs {than} {v['b']} "
                     f"({VALUE_NAMES.get(v['value'], v['value'])}): **{v['verdict']}**")
    return "\n".join(lines)


def provenance(spec: dict, records: list[dict]) -> str:
    """One line on what "ours" and "paper" are: a stand-in data set or a scale-down is named."""
    configs = [r.get("config") or {} for r in records]
    datasets = sorted({str(c.get("dataset")) for c in configs if c.get("dataset")})
    seeds = sorted({r.get("seed") for r in records})
    scale = []
    for key, name in (("train_subset", "training images"), ("width", "width"),
                      ("epochs", "epochs")):
        values = sorted({str(c.get(key)) for c in configs if c.get(key) is not None})
        if values:
            scale.append(f"{name} {'/'.join(values)}")
    scale += _unlabelled(spec, records)
    paper_sets = sorted({str(e.get("dataset")) for e in spec.get("paper") or []
                         if e.get("dataset")})
    stand_in = paper_sets and datasets and set(datasets) != set(paper_sets)
    return (f"Ours: {', '.join(datasets) or '-'}"
            + (" (a stand-in for the paper's data)" if stand_in else "")
            + (f", {', '.join(scale)}" if scale else "")
            + f", {len(seeds)} seed(s) per row"
            + (" — the spec's --quick scale-down" if spec.get("_quick") else "")
            + (". The paper's: " + (spec.get("paper_ref") or "its own settings")
               + (f" on {', '.join(paper_sets)}" if paper_sets else "")
               if spec.get("paper") else ". Beyond the paper: no numbers of its to compare")
            + ".")


def _unlabelled(spec: dict, records: list[dict]) -> list[str]:
    """What a "-" under a row or column key stands for: the runs whose variant leaves the
    key to the base (or to the quick scale) have it in their config (L2 rows' `lam`)."""
    table = spec.get("table") or {}
    notes = []
    for name in table.get("rows", []) + table.get("columns", []):
        values = {str(label_text(r["config"][name])) for r in records
                  if r.get(name) is None and name in (r.get("config") or {})}
        if values:
            notes.append(f"\"-\" under {name}: {'/'.join(sorted(values))}")
    return notes


def _columns(cells) -> list[tuple]:
    return sorted({c for _, c in cells}, key=str)


def _spec_order(spec: dict, rows: list[str]) -> list[tuple]:
    """Rows in the order of the spec's variants (the paper's order)."""
    order = []
    for variant in spec.get("variants") or []:
        labels = normalize_labels(variant)
        key = _key(labels, rows)
        if key not in order:
            order.append(key)
    return order
