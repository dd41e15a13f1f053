"""Data sources beyond one in-memory table: image folders (:mod:`.images`), streamed csv/parquet shards
(:mod:`.streaming`) and user ``tf.data`` pipelines (:mod:`.pipelines`)."""
