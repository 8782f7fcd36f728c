"""``sail-vision report``: one Markdown page from probe result folders."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="one Markdown page (tables and plots) from probe result folders",
        description="Read the summary.json of each `sail-vision probe --out` folder and write one Markdown page: "
                    "a table of every result (method, feature, layer, protocol, val top-1 or mIoU with its 95 %% "
                    "interval, chosen grid point), then per folder its layer sweep, few-shot results and plots.")
    p.add_argument("folders", nargs="+", metavar="DIR", help="probe result folders")
    p.add_argument("--out", metavar="REPORT.md", default=None,
                   help="where to write the page (plot links relative to it); default: print it")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..probes.report import build_report
    from ..probes.results import write_text

    from pathlib import Path

    from ..errors import InputError

    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.is_dir():
        raise InputError(f"--out {out}: is a folder; give the Markdown file to write, e.g. {out / 'report.md'}")
    page = build_report(args.folders, out)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, page + "\n")
        print(f"report of {len(args.folders)} result folder(s) in {args.out}")
    else:
        print(page)
    return 0
