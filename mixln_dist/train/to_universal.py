"""DeepSpeed's ds_to_universal, reading the checkpoint as plain data only (mixln_dist.serialization): run by
`make_universal` as `python -m mixln_dist.train.to_universal <ds_to_universal's arguments>`, in a process of
its own, as DeepSpeed's converter expects."""

import sys

from ..serialization import plain_data_only


def main() -> None:
    from deepspeed.checkpoint import ds_to_universal

    sys.argv[0] = "ds_to_universal"
    args = ds_to_universal.parse_arguments()
    with plain_data_only(args.input_folder):
        ds_to_universal.main(args)


if __name__ == "__main__":
    main()
