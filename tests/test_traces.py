"""TraceDataModule: validation errors name the record, packing wastes nothing, the split is deterministic."""

import gzip
import json

import pytest
import torch

from ra3_lightning.data.sources import DataError
from ra3_lightning.data.traces import TraceDataModule, pack_documents, split_documents, split_records


def write_jsonl(path, records, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def make_dm(path, tokenizer, **kw):
    dm = TraceDataModule(path, **kw)
    dm.connect(tokenizer)
    dm.setup("fit")
    return dm


def test_pack_documents_by_hand():
    # docs of 3 and 4 tokens (EOS included), blocks of 3:
    # flat ids 1 2 3 | 4 5 6 7; positions 0 1 2 | 0 1 2 3
    # blocks [1 2 3] [4 5 6] [7] — the last restarts at 0 (continuation of doc 2)
    out = pack_documents({"input_ids": [[1, 2, 3], [4, 5, 6, 7]], "rationale": [[0] * 3, [0] * 4]}, max_length=3)
    assert out["input_ids"] == [[1, 2, 3], [4, 5, 6], [7]]
    assert out["position_ids"] == [[0, 1, 2], [0, 1, 2], [0]]
    # blocks of 5: [1 2 3 4 5] positions 0 1 2 0 1; [6 7] continues doc 2 -> restarts 0 1
    out = pack_documents({"input_ids": [[1, 2, 3], [4, 5, 6, 7]], "rationale": [[0] * 3, [0] * 4]}, max_length=5)
    assert out["position_ids"] == [[0, 1, 2, 0, 1], [0, 1]]


def test_split_documents_keeps_every_token():
    out = split_documents({"input_ids": [[1, 2, 3, 4, 5]], "rationale": [[0] * 5]}, max_length=2)
    assert out["input_ids"] == [[1, 2], [3, 4], [5]]


def test_packing_loses_no_token(tmp_path, tiny_tokenizer, code_snippets):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in code_snippets * 5])
    dm = make_dm(path, tiny_tokenizer, max_length=32, val_size=0, packing=True)
    n_tokens = sum(len(tiny_tokenizer(t)["input_ids"]) + 1 for t in code_snippets * 5)
    lengths = [len(x["input_ids"]) for x in dm.train_set]
    assert sum(lengths) == n_tokens
    assert all(n == 32 for n in lengths[:-1])  # one chunk: only the very last block may be short
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids", "rationale_mask"}
    assert batch["input_ids"].shape[1] == 32


def test_padding_mode_masks_labels(tmp_path, tiny_tokenizer, code_snippets):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [{"code": t} for t in code_snippets], gz=True)
    dm = make_dm(path, tiny_tokenizer, text_field="code", max_length=512, val_size=0, packing=False, batch_size=6)
    batch = next(iter(dm.train_dataloader()))
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()
    assert (batch["attention_mask"] == 0).any()


def test_split_is_deterministic_and_disjoint(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"x = {i}\n" for i in range(100)]})
    tr1, va1 = split_records(ds, 0.1, seed=3)
    tr2, va2 = split_records(ds, 0.1, seed=3)
    assert va1["text"] == va2["text"] and len(va1) == 10
    assert not set(tr1["text"]) & set(va1["text"])
    assert split_records(ds, 0.1, seed=4)[1]["text"] != va1["text"]


def test_rationale_mask_covers_spans(tmp_path, tiny_tokenizer):
    text = "def f(x):\n    # double it\n    return 2 * x\n"
    start = text.index("    # double")
    end = text.index("    return")
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": text, "spans": [[start, end]]}])
    dm = make_dm(path, tiny_tokenizer, val_size=0, packing=False, rationale_spans_field="spans")
    ex = dm.train_set[0]
    masked = tiny_tokenizer.decode(ex["input_ids"][ex["rationale"]])
    assert "double it" in masked and "return" not in masked and "def" not in masked


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"text": "a = 1\n"}, {"code": "b = 2\n"}], r"record 1: field 'text' is missing"),
        ([{"text": "a = 1\n"}, {"text": 3}], r"record 1: field 'text' must be a string, got int"),
        ([{"text": "a = 1\n"}, {"text": "  \n"}], r"record 1: field 'text' is empty"),
        ([{"text": "a = 1\n"}, {"text": "\udc80"}], r"record 1: field 'text' is not valid Unicode"),
    ],
)
def test_bad_records_are_named(tmp_path, tiny_tokenizer, records, message):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError, match=message) as err:
        make_dm(path, tiny_tokenizer, val_size=0)
    assert "bad.jsonl" in str(err.value)


def test_non_utf8_line_is_named(tmp_path, tiny_tokenizer):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"text": "a = 1\\n"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(DataError, match=r"bin.jsonl:2: line is not valid UTF-8"):
        make_dm(str(path), tiny_tokenizer, val_size=0)


def test_missing_column_lists_columns(tmp_path, tiny_tokenizer):
    import datasets

    datasets.Dataset.from_dict({"code": ["a = 1\n"]}).to_parquet(str(tmp_path / "f.parquet"))
    with pytest.raises(DataError, match=r"no field 'text' \(fields: code\)"):
        make_dm(str(tmp_path / "f.parquet"), tiny_tokenizer, val_size=0)


def test_parquet_and_saved_dataset(tmp_path, tiny_tokenizer, code_snippets):
    import datasets

    ds = datasets.Dataset.from_dict({"text": code_snippets})
    ds.to_parquet(str(tmp_path / "c.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "c.parquet", tmp_path / "saved"):
        dm = make_dm(str(source), tiny_tokenizer, val_size=0, max_length=16)
        assert len(dm.train_set) > 0


def test_workers_and_epoch_shuffle(tmp_path, tiny_tokenizer, code_snippets):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in code_snippets * 8])
    dm = make_dm(path, tiny_tokenizer, max_length=16, val_size=0, num_workers=2, batch_size=4)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    first = torch.cat([b["input_ids"] for b in loader])
    loader.sampler.set_epoch(0)
    again = torch.cat([b["input_ids"] for b in loader])
    loader.sampler.set_epoch(1)
    other = torch.cat([b["input_ids"] for b in loader])
    assert torch.equal(first, again) and not torch.equal(first, other)


def served_blocks(dm: TraceDataModule) -> list[tuple[int, ...]]:
    """The training blocks in the order the first epoch's batches serve them (padding stripped)."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    return [
        tuple(ids[mask.bool()].tolist())
        for batch in loader
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]


def blocks(ds) -> list[tuple[int, ...]]:
    return [tuple(ids) for ids in ds.with_format(None)["input_ids"]]


def test_shuffle_seed_changes_only_the_batch_order(tmp_path, tiny_tokenizer, code_snippets):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": f"{t}# {i}\n"} for i, t in enumerate(code_snippets * 8)])
    kw = {"max_length": 16, "val_size": 0.2, "batch_size": 4, "seed": 3}
    today, reordered = make_dm(path, tiny_tokenizer, **kw), make_dm(path, tiny_tokenizer, shuffle_seed=1, **kw)
    train = blocks(today.train_set)
    assert len(train) >= 16 and len(today.val_set) > 0
    assert blocks(reordered.val_set) == blocks(today.val_set)  # the split is seed's
    assert blocks(reordered.train_set) == train  # so is the packing
    # EpochSeededSampler draws randperm(n) from a generator seeded with seed * 1_000_003 + epoch (epoch 0 here)
    seed_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3 * 1_000_003)).tolist()
    assert served_blocks(today) == [train[i] for i in seed_order]  # shuffle_seed=None: today's order, from seed
    shuffle_order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1 * 1_000_003)).tolist()
    assert served_blocks(reordered) == [train[i] for i in shuffle_order]
    assert served_blocks(reordered) != served_blocks(today)
    assert sorted(served_blocks(reordered)) == sorted(train)  # every block once per epoch


def test_training_tokens_counts_the_batches_a_trainer_draws(tmp_path, tiny_tokenizer):
    from ra3_lightning.data.traces import training_tokens

    texts = ["def f(x):\n    # double it\n    return 2 * x\n", "def g(y):\n    return y\n", "def h():\n    pass\n"]
    spans = [[[text.index("    #"), text.index("    return")]] if "#" in text else [] for text in texts]
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": t, "spans": s} for t, s in zip(texts, spans, strict=True)])
    dm = make_dm(path, tiny_tokenizer, val_size=0, packing=False, batch_size=2, seed=5, rationale_spans_field="spans")
    length = [len(ex["input_ids"]) for ex in dm.train_set]  # one piece per program (EOS included)
    rationale = sum(int(ex["rationale"].sum()) for ex in dm.train_set)
    assert rationale > 0 and all(ex["rationale"].sum() == 0 for ex in list(dm.train_set)[1:])
    # 3 programs in batches of 2: one epoch is 2 batches, every token once
    assert training_tokens(dm, 2) == {"total": sum(length), "rationale": rationale, "code": sum(length) - rationale}
    # a third batch is the first of epoch 1: its two programs are the first two of that epoch's permutation
    epoch1 = torch.randperm(3, generator=torch.Generator().manual_seed(5 * 1_000_003 + 1)).tolist()[:2]
    third = training_tokens(dm, 3)
    assert third["total"] == sum(length) + sum(length[i] for i in epoch1)
    assert third["rationale"] == rationale * (2 if 0 in epoch1 else 1)
