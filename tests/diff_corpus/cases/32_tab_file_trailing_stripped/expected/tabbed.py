def schedule(step, total):
	"""Tab-indented helper with trailing spaces on some lines."""   
	if step < 10:
		return step / 10

	frac = step / total  
	return 0.5 * (1 + math.cos(math.pi * frac))


WARMUP = 10
DECAY = "cosine"
