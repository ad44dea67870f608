"""Turn MOTChallenge tracking ground truth into a ReID dataset in Market-1501 layout:
python tools/prepare_mot.py --mot ROOT --out DIR [--every N] [--min-visibility V] ...

ROOT holds MOT17, MOT20, DanceTrack or SportsMOT sequences at any depth (folders with
seqinfo.ini, img1/ and gt/gt.txt; those without gt.txt are skipped). Each (sequence,
track) becomes one identity; identities are split into train and test; each sequence is
cut into time segments written as camera ids, and a test identity's query and gallery
images come from different segments. Details: reid/data/mot.py.
"""

from reid.data.mot import check_output_dir, plan_mot_dataset, summary_table, write_market_folder
from reid.utils.cli import ToolParser, run_cli
from reid.utils.logging import setup_logging


def main() -> None:
    parser = ToolParser(__doc__)
    parser.add_argument("--mot", required=True, metavar="ROOT", help="folder of sequences")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument(
        "--every",
        type=int,
        metavar="N",
        default=5,
        help="crop every N-th frame (default 5: neighbouring frames are near copies)",
    )
    parser.add_argument(
        "--min-visibility",
        type=float,
        default=0.5,
        metavar="V",
        help="least visible share of a MOT17/MOT20 box (default 0.5: the labelled person "
        "fills at least half of the crop)",
    )
    parser.add_argument(
        "--min-height",
        type=int,
        default=32,
        metavar="PX",
        help="least box height after clipping to the frame (default 32)",
    )
    parser.add_argument(
        "--min-width",
        type=int,
        default=12,
        metavar="PX",
        help="least box width after clipping (default 12: drops slivers at the frame border)",
    )
    parser.add_argument(
        "--segment-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="length of the time segments used as cameras (default 10)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="share of identities (or sequences) that test (default 0.5, as Market-1501)",
    )
    parser.add_argument(
        "--split-by",
        choices=("identity", "sequence"),
        default="identity",
        help="split identities within each sequence (default), or hold out whole sequences",
    )
    parser.add_argument("--seed", type=int, default=0, help="the split and the query segments")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset this tool wrote at --out"
    )
    args = parser.parse_args()

    setup_logging()
    check_output_dir(args.out, overwrite=args.overwrite)  # before the long work
    plan = plan_mot_dataset(
        args.mot,
        every=args.every,
        min_visibility=args.min_visibility,
        min_height=args.min_height,
        min_width=args.min_width,
        segment_seconds=args.segment_seconds,
        test_fraction=args.test_fraction,
        split_by=args.split_by,
        seed=args.seed,
    )
    out = write_market_folder(plan, args.out, overwrite=args.overwrite)
    print(summary_table(plan, out))


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
