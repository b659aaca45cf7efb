def last():
    return 43