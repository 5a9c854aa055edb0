"""Backend-specific fast paths. Each computes what an ``adamkit.ops`` composition computes, and the
tests hold it to that composition step for step; the ops path stays the reference."""
