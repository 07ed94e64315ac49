"""visionzoo.ops"""
