"""Networks and noise processes, kept apart as in MONAI/diffusers: the Brownian-bridge scheduler and
its sampling loop (Stage I), the DDIM noise schedule and loop (Stage II), and the stage networks."""
