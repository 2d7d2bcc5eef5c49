"""The `mimir-hf` command line: one module per command (`run`, `pretrain`, `finetune`, `evaluate`; `convert` is
`mimir_hf.convert`), each a straight line over the library's dataclasses, and `common` for what they share."""
