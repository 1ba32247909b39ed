"""``ebmrun-report <multirun dir>``: one table of a sweep's jobs, best first.

Each job dir of a multirun holds ``.hydra/overrides.yaml`` (what the job changed) and, when
it finished, ``metrics.json`` (with the objective metric the sweep optimises), or
``error.txt`` when it failed. The table lists every job: its overrides, status, the
objective and the chosen metrics; failed jobs go last with their error line, and a
finished job that raised a health warning (e.g. EBGAN's mode collapse) shows the first.
Written as markdown to stdout and as ``report.md`` / ``report.csv`` in the sweep dir.

    ebmrun-report outputs/multirun/2026-11-25_10-00-00_ab12cd
    ebmrun-report <dir> --metrics final/loss,eval/samples/frechet --maximize
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ebmrun.checkpoint import atomic_write_bytes
from ebmrun.errors import UserError


@dataclass
class JobRow:
    """One job of a sweep."""

    name: str
    overrides: list[str]
    status: str  # ok | failed | incomplete
    metrics: dict[str, float] = field(default_factory=dict)
    objective_name: str | None = None
    objective: float | None = None
    error: str = ""
    warning: str = ""  # the first health warning of a finished job (its metrics.json)


def _flatten(values: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


def read_job(job_dir: Path) -> JobRow:
    """The row of one job dir (overrides, status, metrics or error line)."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
    row = JobRow(name=job_dir.name, overrides=[str(o) for o in overrides or []],
                 status="incomplete")
    metrics_file, error_file = job_dir / "metrics.json", job_dir / "error.txt"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        row.status = "ok"
        objective = metrics.pop("objective", None) or {}
        metrics.pop("tables", None)
        row.warning = next(iter(metrics.pop("warnings", None) or []), "")
        row.metrics = _flatten(metrics)
        row.objective_name = objective.get("name")
        value = objective.get("value")
        row.objective = float(value) if isinstance(value, (int, float)) else None
    elif error_file.is_file():
        row.status = "failed"
        row.error = error_file.read_text().strip().splitlines()[0] if error_file.stat().st_size else ""
    return row


def collect(sweep_dir: Path) -> list[JobRow]:
    """Rows of every job dir under ``sweep_dir`` (dirs holding ``.hydra/`` or results)."""
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a directory (fix: pass a multirun dir, e.g. "
                        f"outputs/multirun/<timestamp>_<id>)")
    # An override value with "/" (e.g. trainer.objective_metric=eval/samples/frechet) nests
    # the job dir, so look at any depth for the files that mark a job.
    markers = [*sweep_dir.rglob(".hydra"), *sweep_dir.rglob("metrics.json"),
               *sweep_dir.rglob("error.txt")]
    jobs = sorted({m.parent for m in markers if m.parent != sweep_dir})
    if not jobs:
        raise UserError(f"{sweep_dir} holds no job dirs (fix: pass the dir that `ebmrun -m` "
                        f"printed, which contains 0_<swept overrides>, 1_<...>, ...)")
    rows = [read_job(d) for d in jobs]
    for row, job_dir in zip(rows, jobs):
        row.name = str(job_dir.relative_to(sweep_dir))  # "<num>_<swept overrides>[/...]"
    return rows


def sort_rows(rows: list[JobRow], sort_key: str | None, maximize: bool) -> list[JobRow]:
    """Finished jobs by ``sort_key`` (default: each job's objective), best first; then
    incomplete and failed jobs."""
    def value(row: JobRow) -> float:
        v = row.objective if sort_key is None else row.metrics.get(sort_key)
        if v is None or math.isnan(v):
            return math.inf
        return -v if maximize else v

    order = {"ok": 0, "incomplete": 1, "failed": 2}
    return sorted(rows, key=lambda r: (order[r.status], value(r), r.name))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def table(rows: list[JobRow], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    objective = next((r.objective_name for r in rows if r.objective_name), "objective")
    header = ["job", "status", "overrides", f"objective ({objective})", *metrics,
              "error / warning"]
    body = [[r.name.split("_", 1)[0], r.status, " ".join(r.overrides), _fmt(r.objective),
             *[_fmt(r.metrics.get(m)) for m in metrics],
             r.error or (f"warning: {r.warning}" if r.warning else "")] for r in rows]
    return header, body


def markdown(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)]) + "\n"


def csv_text(rows: list[JobRow]) -> str:
    """Every numeric metric of every job (one column per metric name)."""
    names = sorted({k for r in rows for k in r.metrics})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["job", "status", "overrides", "objective_name", "objective", *names, "error",
                     "warning"])
    for r in rows:
        writer.writerow([r.name, r.status, " ".join(r.overrides), r.objective_name or "",
                         _fmt(r.objective), *[_fmt(r.metrics.get(n)) for n in names], r.error,
                         r.warning])
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ebmrun-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (outputs/multirun/...)")
    parser.add_argument("--metrics", default="", help="comma-separated metric columns")
    parser.add_argument("--sort", default=None, help="metric to sort by (default: objective)")
    parser.add_argument("--maximize", action="store_true", help="higher is better")
    args = parser.parse_args(argv)
    try:
        rows = sort_rows(collect(args.sweep_dir), args.sort, args.maximize)
    except UserError as exc:
        print(f"ebmrun-report: error: {exc}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    metrics = [m for m in args.metrics.split(",") if m]
    text = markdown(*table(rows, metrics))
    atomic_write_bytes(args.sweep_dir / "report.md", text.encode())
    atomic_write_bytes(args.sweep_dir / "report.csv", csv_text(rows).encode())
    sys.stdout.write(text)
    print(f"\n{len(rows)} jobs ({sum(r.status == 'ok' for r in rows)} ok, "
          f"{sum(r.status == 'failed' for r in rows)} failed); CSV: {args.sweep_dir / 'report.csv'}")


if __name__ == "__main__":
    main()
