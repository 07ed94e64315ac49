"""visionzoo.metrics"""
