"""podnet.agent"""
