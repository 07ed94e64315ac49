"""visionzoo.layers"""
