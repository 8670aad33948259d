"""Interaction data: reading, preprocessing, splitting, batching and generated data.

``load_dataset("ml-100k" | path, ...)`` gives an :class:`InteractionDataset`;
``dataset.split("loo" | "ratio")`` a :class:`DataSplit`, whose ``train_samples(objective,
max_len)`` and ``eval_samples(which, max_len)`` give left-padded batches;
``item_text_table(dataset.item_features.text)`` the items' text embeddings (cached).
"""

from zoo.data.atomic import AtomicTable, DataFormatError, RawInteractions, read_atomic, read_inter
from zoo.data.batching import (
    NextItemSamples,
    ShiftedSequenceSamples,
    WindowSamples,
    collate_left_padded,
    flat_ranges,
    gather_windows,
    left_pad,
    trim_padding,
)
from zoo.data.csv_log import read_csv
from zoo.data.builtin import RECBOLE_INSTALL, builtin_names, builtin_path
from zoo.data.dataset import InteractionDataset, ItemFeatures
from zoo.data.features import item_features
from zoo.data.item_text import MiniLMEncoder, item_text_table
from zoo.data.loading import load_dataset
from zoo.data.preprocess import Preprocessing, build_dataset
from zoo.data.sequences import Sequences
from zoo.data.split import DataSplit, EvalTargets, leave_one_out, ratio_by_time
from zoo.data.synthetic import generate_dataset, generate_sequences
from zoo.data.vocab import PAD_TOKEN, Vocabulary

__all__ = [
    "AtomicTable", "DataFormatError", "RawInteractions", "read_atomic", "read_csv", "read_inter",
    "NextItemSamples", "ShiftedSequenceSamples", "WindowSamples", "collate_left_padded", "flat_ranges",
    "gather_windows", "left_pad", "trim_padding",
    "RECBOLE_INSTALL", "builtin_names", "builtin_path",
    "InteractionDataset", "ItemFeatures", "Sequences", "item_features", "load_dataset",
    "MiniLMEncoder", "item_text_table",
    "Preprocessing", "build_dataset", "DataSplit", "EvalTargets", "leave_one_out", "ratio_by_time",
    "generate_dataset", "generate_sequences", "PAD_TOKEN", "Vocabulary",
]
