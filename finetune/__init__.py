"""The bundled LoRA/QLoRA trainer: ``python -m finetune train|merge|generate|eval``.

``finetune.data`` turns the pipeline's ``data.json`` / ``messages.jsonl`` (and ingest's raw text)
into tokenized examples (prompt masked, EOS always last), ``finetune.fim`` builds the
fill-in-the-middle rows and prompts, ``finetune.model`` loads base models (HF directories, GGUF
files, the embedded SmolLM2) with optional 4-bit/8-bit quantization and config overrides (RoPE)
and attaches LoRA adapters, ``finetune.train`` runs TRL's SFTTrainer over them, and
``finetune.merge`` / ``finetune.generate`` use the saved adapter. ``finetune.eval`` with
``finetune.humaneval`` and ``finetune.infilling`` measures HumanEval and HumanEval infilling.
Heavy libraries (torch, transformers, peft, trl) are imported lazily.
"""
