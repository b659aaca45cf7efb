ALPHA = 0.5
BETA = 2

def scale(x):
    return ALPHA * x + BETA
