"""visionzoo.generative"""
