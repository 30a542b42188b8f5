"""The lean CSM model (backbone, depth decoder, sampling, prompt layout, Mimi codec) and loading its checkpoint."""
