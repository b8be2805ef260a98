"""The data half: annotation readers (``formats/``), ingest and its report, the manifest, images for
shards, the record spec and the shard writers (``shard/``), ``dataset_info.json``. No TensorFlow here
(``docs/architecture.md``)."""
