"""``python -m ebmrun.data.fetch``: make sure MNIST / Fashion-MNIST are in the data root.

    python -m ebmrun.data.fetch [mnist fashion_mnist] [--root DIR]

Downloads the missing files (md5-verified, all or nothing: see :mod:`ebmrun.data.download`)
into ``--root`` (default ``$EBMRUN_DATA_DIR``, else ``./data``); files already there are not
touched and need no network. ``make data`` runs this, and ``make run`` / ``make test`` run
``make data`` first. Without network it prints one ``ebmrun: error:`` line naming the files,
the folder and the ways to provide them, and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ebmrun.data.download import DownloadError, fetch_dataset
from ebmrun.data.idx import IDX_DATASETS, IDX_FILES, SUFFIXES, misdirected_root
from ebmrun.data.root import DATA_DIR_ENV, missing_files, resolve_data_root
from ebmrun.errors import UserError

DEFAULT = ("mnist", "fashion_mnist")  # what `make run` and `make test` need
FILES = [f + ".gz" for pair in IDX_FILES.values() for f in pair]


def missing_by_folder(root: Path, names: Sequence[str] = DEFAULT) -> dict[str, list[str]]:
    """``{"<folder>/raw": [missing file names]}`` for the datasets ``names`` under ``root``
    (a file counts as present in its .gz or unpacked form)."""
    out = {}
    for name in names:
        folder = f"{IDX_DATASETS[name].folder}/raw"
        missing = missing_files(root, [f"{folder}/{f}" for pair in IDX_FILES.values()
                                       for f in pair], SUFFIXES)
        if missing:
            out[folder] = [Path(m).name for m in missing]
    return out


def missing_message(root: Path, missing: dict[str, list[str]], reason: str = "") -> str:
    """One line: the missing files, their folders under ``root``, why (``reason``, e.g. a
    failed download), and the ways to provide them."""
    folders = " and ".join(f"{folder}/" for folder in missing)
    lists = {tuple(files) for files in missing.values()}
    if len(lists) == 1:  # the usual case: the same files missing everywhere
        what = f"{', '.join(lists.pop())} in {folders}"
    else:
        what = "; ".join(f"{', '.join(files)} in {folder}/" for folder, files in missing.items())
    why = f" ({reason})" if reason else ""
    return (f"data missing under {root}: {what}{why}; fix: run `make data` (or `python -m "
            f"ebmrun.data.fetch`) where there is network, or copy the files into {folders} "
            f"under {root}, or set {DATA_DIR_ENV}=<dir> to a root that holds {folders}")


def ensure(names: Sequence[str] = DEFAULT, root: str | None = None) -> Path:
    """Download what is missing of ``names`` into the data root; UserError (one line, nothing
    written) if some of it cannot be had. Returns the data root."""
    data_root = resolve_data_root(root)
    missing = missing_by_folder(data_root, names)
    reasons = []
    for name in names:
        folder = f"{IDX_DATASETS[name].folder}/raw"
        if folder not in missing:
            continue
        meant = misdirected_root(IDX_DATASETS[name], data_root)
        if meant is not None:
            raise UserError(f"data root {data_root} is inside the {IDX_DATASETS[name].folder} "
                            f"folder; fix: --root {meant} (or {DATA_DIR_ENV}={meant})")
        try:
            fetch_dataset(name, data_root / folder, missing[folder])
            print(f"data: {name} downloaded into {data_root / folder} (md5 verified)",
                  file=sys.stderr)
        except DownloadError as exc:
            reasons.append(str(exc))
    missing = missing_by_folder(data_root, names)
    if missing:
        reason = f"download failed: {reasons[0]}" if reasons else ""
        raise UserError(missing_message(data_root, missing, reason))
    return data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", default=list(DEFAULT),
                        help=f"any of {', '.join(sorted(IDX_DATASETS))} (default: both)")
    parser.add_argument("--root", default=None,
                        help=f"data root (default: ${DATA_DIR_ENV}, else ./data)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.datasets) - set(IDX_DATASETS))
    if unknown:
        parser.error(f"unknown dataset {', '.join(unknown)} (choose from: "
                     f"{', '.join(sorted(IDX_DATASETS))})")
    try:
        root = ensure(args.datasets, args.root)
    except UserError as exc:
        print(f"ebmrun: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"data: {', '.join(args.datasets)} present under {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
