"""podnet.daemon"""
