"""DeepSpeed training: process groups, the generated DeepSpeed config, optimizer, checkpoints and the loop."""
