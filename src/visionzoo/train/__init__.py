"""visionzoo.train"""
