"""Reading and writing weights without loading models: safetensors headers and shard indexes,
positioned tensor reads and an O_DIRECT streaming writer, content hashes of checkpoints, and
the memory probes that show the streaming stays flat."""
