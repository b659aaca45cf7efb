"""Running untrusted training code: the sandbox, the experiment runner and the device pool."""
