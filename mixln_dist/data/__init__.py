"""The data pipeline: a SentencePiece tokenizer, packed token shards prepared through `datasets`, resumable loaders.

    python launch/train_tokenizer.py      # data=sample: an 8k BPE on the bundled Austen novels
    python launch/prepare_data.py         # tokenize them into data/prepared/sample (a no-op when done)

In the trainer:

    ensure_prepared(cfg.data)                                           # rank 0, when data.auto_prepare
    check_dataset(cfg.data, cfg.model.vocab_size, cfg.data.seq_len)     # every rank, before any work
    loader = TrainLoader(cfg.data.dir, cfg.data.seq_len, global_batch_size, dp_rank, dp_world, cfg.data.seed)
    batch = loader.next_batch()                  # (G // W, seq_len + 1) int64: inputs [:, :-1], targets [:, 1:]

Modules, bottom up: meta (DataError, the directory format and its checks), sources (text through `datasets`),
tokenizer, prepare (the shards), loader. Importing this package does not import `datasets`; reading text does.
docs/data.md has the details.
"""

from ..errors import DataError
from .loader import TokenStream, TrainLoader, eval_batches
from .meta import DatasetMeta, ShardMeta, SplitMeta, check_dataset, verify_checksums
from .prepare import ensure_prepared, prepare_dataset
from .sources import read_documents
from .tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "DataError",
    "DatasetMeta",
    "ShardMeta",
    "SplitMeta",
    "TokenStream",
    "Tokenizer",
    "TrainLoader",
    "check_dataset",
    "ensure_prepared",
    "eval_batches",
    "prepare_dataset",
    "read_documents",
    "train_tokenizer",
    "verify_checksums",
]
