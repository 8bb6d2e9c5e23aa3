#!/bin/sh
# The images' entry point: `IMAGE pretrain model=debug train.steps=3` runs mixln-pretrain with those overrides;
# any other command (python, deepspeed, torchrun, bash) runs as given.
set -eu

# Runtimes that start the container as another user, or read-only (docker --user, Charliecloud, Apptainer), leave
# the prebuilt DeepSpeed ops and $HOME unwritable; torch takes a lock file next to the ops, so use a private copy.
if [ -n "${TORCH_EXTENSIONS_DIR:-}" ] && [ -d "$TORCH_EXTENSIONS_DIR" ] && [ ! -w "$TORCH_EXTENSIONS_DIR" ]; then
    copy=$(mktemp -d "${TMPDIR:-/tmp}/mixln-ops.XXXXXX")
    cp -a "$TORCH_EXTENSIONS_DIR/." "$copy/"
    export TORCH_EXTENSIONS_DIR="$copy"
fi
if [ ! -w "${HOME:-/nonexistent}" ]; then
    export HOME="${TMPDIR:-/tmp}"
fi

case "${1:-help}" in
    pretrain | prepare-data | train-tokenizer | model | evaluate | export-hf | analyze)
        command="mixln-$1"
        shift
        exec "$command" "$@"
        ;;
    help | --help | -h)
        echo "usage: IMAGE {pretrain|prepare-data|train-tokenizer|model|evaluate|export-hf|analyze} [overrides...]"
        echo "       IMAGE COMMAND [ARGS...]   (python, deepspeed, torchrun, bash, ...)"
        echo "Runs go under the working directory (/workspace) or \$MIXLN_HOME; mount a host folder there."
        ;;
    *)
        exec "$@"
        ;;
esac
