"""podnet.kernel"""
