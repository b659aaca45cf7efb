ALPHA = 0.25
BETA = 2

def scale(x):
    return ALPHA * x + BETA
