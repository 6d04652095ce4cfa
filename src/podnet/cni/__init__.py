"""podnet.cni"""
