"""The batched renderer: slots, requests, the shared prefix cache, the static step, CUDA graphs, memory sizing."""
