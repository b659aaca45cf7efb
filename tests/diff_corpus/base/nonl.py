def last():
    return 42